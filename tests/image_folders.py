"""A small image folder with every format case (fixture `folder` in conftest.py)."""

import io

import numpy as np
from PIL import Image


def save_image(path, array, fmt, mode=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array, mode).save(path, fmt)


def _jpeg_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, 'JPEG')
  return buffer.getvalue()


RGBA = np.zeros((5, 7, 4), np.uint8)
RGBA[...] = (10, 200, 30, 128)


def write_image_folder(root):
  """train: cat (RGB JPEG 20x30, gray PNG 17x9), dog (RGBA PNG 5x7, gray JPEG 11x13, 2 corrupt);
  test: cat (1), bird (1); plus files to be ignored."""
  rng = np.random.RandomState(0)
  save_image(root / 'train/cat/a.jpg', rng.randint(0, 256, (20, 30, 3), np.uint8), 'JPEG')
  save_image(root / 'train/cat/b.png', rng.randint(0, 256, (17, 9), np.uint8), 'PNG', 'L')
  save_image(root / 'train/dog/c.PNG', RGBA, 'PNG', 'RGBA')
  save_image(root / 'train/dog/d.jpeg', rng.randint(0, 256, (11, 13), np.uint8), 'JPEG', 'L')
  (root / 'train/dog/bad.jpg').write_bytes(b'not an image at all')
  jpeg = _jpeg_bytes(rng.randint(0, 256, (40, 40, 3), np.uint8))
  (root / 'train/dog/truncated.jpg').write_bytes(jpeg[:len(jpeg) // 2])
  (root / 'train/dog/notes.txt').write_text('ignored')
  save_image(root / 'test/cat/e.jpg', rng.randint(0, 256, (8, 8, 3), np.uint8), 'JPEG')
  save_image(root / 'test/bird/f.png', rng.randint(0, 256, (8, 8, 3), np.uint8), 'PNG')
  return root
