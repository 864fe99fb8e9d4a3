"""PNG plots: valid files of the expected pixel size, colours, positions, missing matplotlib."""

import sys

import numpy as np
import pytest
from PIL import Image

from simclr_tf2 import embed
from simclr_tf2.inference import embeddings as embeddings_lib
from simclr_tf2.inference import plots

TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's tab10 colours 0 and 1
RED, GREEN = (255, 0, 0), (0, 255, 0)


def pixels(path):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return np.asarray(image.convert('RGB'))


def has_colour(image, colour):
  return bool(np.any(np.all(image == colour, axis=-1)))


def test_scatter_is_800_px_with_a_colour_per_class(tmp_path):
  points = np.array([[0., 0.], [1., 1.], [0., 1.], [1., 0.]])
  labeled = pixels(plots.scatter_plot(points, str(tmp_path / 'a.png'), np.array([0, 0, 1, 1]),
                                      ['zero', 'one'], title='t'))
  assert labeled.shape == (800, 800, 3)
  assert has_colour(labeled, TAB_BLUE) and has_colour(labeled, TAB_ORANGE)
  unlabeled = pixels(plots.scatter_plot(points, str(tmp_path / 'b.png')))
  assert unlabeled.shape == (800, 800, 3)
  assert has_colour(unlabeled, TAB_BLUE) and not has_colour(unlabeled, TAB_ORANGE)


def test_thumbnail_map_draws_each_image_at_its_point(tmp_path):
  side = 10
  thumbnails = np.zeros([2, side, side, 3], np.uint8)
  thumbnails[0, ..., 0] = 255  # red, at the lowest point: bottom-left corner
  thumbnails[1, ..., 1] = 255  # green, at the highest point: top-right corner
  points = np.array([[-3., -3.], [5., 7.]])
  image = pixels(plots.thumbnail_map(points, thumbnails, str(tmp_path / 'm.png'), size=200))
  assert image.shape == (200, 200, 3)
  assert np.all(image[190:, :10] == RED) and np.all(image[:10, 190:] == GREEN)
  assert np.all(image[100, 100] == 255)  # white elsewhere
  framed = pixels(plots.thumbnail_map(points, thumbnails, str(tmp_path / 'f.png'),
                                      labels=np.array([1, 0]), size=200))
  assert tuple(framed[199, 0]) == TAB_ORANGE and tuple(framed[195, 5]) == RED


def test_projections_are_reproducible():
  rng = np.random.default_rng(0)
  features = rng.standard_normal((40, 12))
  first, second = plots.project_2d(features, 'tsne', seed=3), plots.project_2d(features, 'tsne',
                                                                                seed=3)
  assert first.shape == (40, 2)
  np.testing.assert_array_equal(first, second)
  # Points on a line: the first principal coordinate is the centred position along it.
  line = np.outer(np.arange(5.), [3., 4.])  # positions 0, 5, 10, 15, 20 along (0.6, 0.8)
  pca = plots.project_2d(line, 'pca')
  np.testing.assert_allclose(np.abs(pca[:, 0]), [10., 5., 0., 5., 10.], atol=1e-9)
  with pytest.raises(ValueError, match='at least 3'):
    plots.project_2d(features[:2])


def test_write_plots_files(tmp_path):
  rng = np.random.default_rng(1)
  features = rng.standard_normal((12, 6))
  thumbnails = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
  paths = embeddings_lib.write_plots(str(tmp_path), features, ['pca', 'map'], thumbnails=thumbnails)
  assert [p.rsplit('/', 1)[1] for p in paths] == ['pca.png', 'thumbnail_map.png']
  assert pixels(paths[0]).shape == (800, 800, 3)
  assert pixels(paths[1]).shape == (plots.MAP_PIXELS, plots.MAP_PIXELS, 3)


def test_missing_matplotlib_is_a_one_line_error(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # makes `import matplotlib` fail
  with pytest.raises(ImportError, match=r'pip install matplotlib \(the \[plots\] extra'):
    plots.require_matplotlib()
  # The tool checks before loading anything (the source does not even exist).
  code = embed.run(['embed', '--source=/nonexistent', '--output_dir=/nonexistent/out',
                    '--plots=tsne'])
  err = capsys.readouterr().err
  assert code == 1
  assert err.startswith('error: plots need matplotlib') and err.count('\n') == 1
  # The default plots are skipped on a base install: one line says so, the tool goes on (and
  # here stops at the missing source).
  code = embed.run(['embed', '--source=/nonexistent', '--output_dir=/nonexistent/out'])
  lines = capsys.readouterr().err.splitlines()
  assert code == 1 and lines[0].startswith('Plots skipped: plots need matplotlib')
  assert lines[1].startswith('error: ') and '/nonexistent' in lines[1]
