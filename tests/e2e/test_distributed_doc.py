"""The loopback cluster of docs/distributed.md runs as written: its ```bash block (two workers,
TF_CONFIG built from shell variables, one in the background) goes to bash unchanged except for
its two ports (free ones here) and its model_dir (a temporary one); `python` is this
interpreter (its directory first in PATH). Both workers must train to the end.
"""

import os
import re
import socket
import subprocess
import sys

import pytest

from golden_data import REPO

PAGE = REPO / 'docs' / 'distributed.md'
DOC_PORTS = ('23456', '23457')
DOC_MODEL_DIR = '/tmp/simclr_two_workers'


def loopback_block():
  blocks = [block for block in re.findall(r'```bash\n(.*?)```', PAGE.read_text(encoding='utf-8'),
                                          flags=re.S) if 'CLUSTER=' in block]
  assert len(blocks) == 1, 'docs/distributed.md: one ```bash block sets CLUSTER='
  block = blocks[0]
  for text in (*DOC_PORTS, DOC_MODEL_DIR):
    assert text in block, f'the loopback block no longer uses {text}: update this test'
  return block


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [str(s.getsockname()[1]) for s in sockets]
  finally:
    for s in sockets:
      s.close()


@pytest.mark.slow
def test_the_documented_loopback_cluster_trains(tmp_path):
  script = loopback_block()
  for documented, free in zip(DOC_PORTS, free_ports(2)):
    script = script.replace(documented, free)
  model_dir = tmp_path / 'model'
  script = script.replace(DOC_MODEL_DIR, str(model_dir))
  bin_dir = os.path.dirname(sys.executable)  # `python` in the block: this interpreter
  env = {key: value for key, value in os.environ.items()
         if key != 'TF_CONFIG' and not key.startswith('SLURM_')}
  env.update(PATH=f'{bin_dir}{os.pathsep}{env.get("PATH", "")}', TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(['bash', '-e', '-c', script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
  worker1 = (tmp_path / 'worker1.log').read_text(errors='replace')
  assert result.returncode == 0, (result.stderr[-3000:], worker1[-3000:])
  assert '2 replicas (MultiWorkerMirroredStrategy, worker 0 of 2)' in result.stdout + result.stderr
  assert '2 replicas (MultiWorkerMirroredStrategy, worker 1 of 2)' in worker1
  assert 'done in' in worker1 and 'error' not in worker1, worker1[-3000:]
  assert (model_dir / 'ckpt-4.index').exists()
