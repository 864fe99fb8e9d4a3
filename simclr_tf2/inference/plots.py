"""PNG pictures of embeddings: 2-D scatter coloured by class and a map of thumbnails.

Needs matplotlib (the `plots` extra: `pip install -e ".[plots]"` in a clone); drawn with the Agg
canvas directly, so no display and no global pyplot state. Seeds are fixed: the same embeddings
give the same picture.
"""

from typing import List, Optional

import numpy as np

SCATTER_INCHES = 8
SCATTER_DPI = 100  # scatter PNGs are SCATTER_INCHES * SCATTER_DPI pixels square
MAP_PIXELS = 2000  # side of the thumbnail map
MAP_THUMBNAIL = 40  # largest thumbnail side on the map (smaller thumbnails are used as they are)
TSNE_PCA_DIMENSIONS = 50  # t-SNE runs on the first principal components, as usually recommended
MAX_LEGEND_CLASSES = 20


def require_matplotlib():
  """Imports matplotlib or raises a one-line ImportError naming the extra to install."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError('plots need matplotlib: pip install matplotlib (the [plots] extra of '
                      'simclr_tf2)') from None
  return matplotlib


def project_2d(features: np.ndarray, method: str = 'tsne', seed: int = 0) -> np.ndarray:
  """[N, 2] coordinates: 'pca' (fast, linear) or 'tsne' (on the first 50 principal components,
  perplexity min(30, (N - 1) / 3))."""
  from sklearn.decomposition import PCA  # pylint: disable=import-outside-toplevel
  from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
  from simclr_tf2.inference.probes import single_threaded_numerics  # pylint: disable=import-outside-toplevel
  features = np.asarray(features, np.float64)
  count = len(features)
  if count < 3:
    raise ValueError(f'a 2-D projection needs at least 3 embeddings, got {count}')
  if method not in ('pca', 'tsne'):
    raise ValueError(f'unknown projection {method!r}: use tsne or pca')
  with single_threaded_numerics():
    if method == 'pca':
      return _pad_2d(PCA(n_components=min(2, *features.shape), random_state=seed)
                     .fit_transform(features))
    components = min(TSNE_PCA_DIMENSIONS, *features.shape)
    reduced = PCA(n_components=components, random_state=seed).fit_transform(features)
    return TSNE(n_components=2, perplexity=min(30., (count - 1) / 3.), init='pca',
                random_state=seed).fit_transform(reduced)


def _pad_2d(points):
  """PCA of rank-1 data gives one column; keep [N, 2]."""
  return np.pad(points, [(0, 0), (0, 2 - points.shape[1])])


def class_colours(num_classes: int) -> np.ndarray:
  """[num_classes, 4] RGBA: tab10 / tab20 when they suffice, else evenly spaced hues."""
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  if num_classes <= 10:
    return colormaps['tab10'](np.arange(num_classes))
  if num_classes <= 20:
    return colormaps['tab20'](np.arange(num_classes))
  return colormaps['hsv'](np.linspace(0., 1., num_classes, endpoint=False))


def scatter_plot(points: np.ndarray, path: str, labels: Optional[np.ndarray] = None,
                 class_names: Optional[List[str]] = None, title: str = '') -> str:
  """800 x 800 PNG of the 2-D points, one colour per class with a legend (up to 20 classes),
  a single colour without labels."""
  require_matplotlib()
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(SCATTER_INCHES, SCATTER_INCHES), dpi=SCATTER_DPI)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  size = max(2., min(20., 20000. / max(len(points), 1)))
  if labels is None:
    axes.scatter(points[:, 0], points[:, 1], s=size, color='tab:blue', linewidths=0)
  else:
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    colours = class_colours(num_classes)
    for label in np.unique(labels):
      name = class_names[label] if class_names and label < len(class_names) else str(label)
      chosen = labels == label
      axes.scatter(points[chosen, 0], points[chosen, 1], s=size, color=colours[label],
                   linewidths=0, label=name)
    if num_classes <= MAX_LEGEND_CLASSES:
      axes.legend(loc='best', markerscale=max(1., 30. / size) ** 0.5, fontsize='small',
                  framealpha=0.8)
  axes.set_xticks([])
  axes.set_yticks([])
  if title:
    axes.set_title(title)
  figure.tight_layout()
  figure.savefig(path, format='png')
  return path


def thumbnail_map(points: np.ndarray, thumbnails: np.ndarray, path: str,
                  labels: Optional[np.ndarray] = None, size: int = MAP_PIXELS) -> str:
  """`size` x `size` PNG with each thumbnail drawn centred on its (rescaled) 2-D position, later
  images on top; with labels, a 2-pixel frame in the class colour of the scatter plot."""
  require_matplotlib()
  from matplotlib import image  # pylint: disable=import-outside-toplevel
  points = np.asarray(points, np.float64)
  if thumbnails is None or len(thumbnails) != len(points):
    raise ValueError('thumbnail map: one thumbnail per point is needed')
  side = min(MAP_THUMBNAIL, thumbnails.shape[1])
  thumbs = _resize(thumbnails, side)
  canvas = np.full([size, size, 3], 255, np.uint8)
  low, high = points.min(axis=0), points.max(axis=0)
  scaled = (points - low) / np.where(high > low, high - low, 1.) * (size - side)
  colours = None
  if labels is not None:
    colours = np.round(class_colours(int(np.max(labels)) + 1)[:, :3] * 255).astype(np.uint8)
  for index, (x, y) in enumerate(np.round(scaled).astype(int)):
    top = size - side - y  # image rows grow downwards, plot y upwards
    tile = thumbs[index].copy()
    if colours is not None:
      colour = colours[int(labels[index])]
      tile[:2], tile[-2:], tile[:, :2], tile[:, -2:] = colour, colour, colour, colour
    canvas[top:top + side, x:x + side] = tile
  image.imsave(path, canvas, format='png')
  return path


def _resize(images: np.ndarray, side: int) -> np.ndarray:
  if images.shape[1] == side and images.shape[2] == side:
    return images
  from PIL import Image  # pylint: disable=import-outside-toplevel
  return np.stack([np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
                   for image in images])
