"""The benchmark table: training images/s by configuration x precision x XLA, beside a baseline,
plus the input pipeline alone. Prints a table and writes it as JSON. Asserts nothing.

    python bench/bench.py [--repeats=2] [--json=bench/results.json] [--quick] [--no-jit]

Also times the SavedModel export and the conversion to PyTorch (bench/bench_export.py).

Every figure comes from fresh processes (bench/train_worker.py), so warm-up and peak memory are
per variant. Variants run round-robin `repeats` times so that machine noise hits all alike; each
images/s figure is the median over every timed block of every repeat.

Baseline: the float32 path of BASELINE_COMMIT, the commit this benchmark was introduced against
(measured at 1.01x the official implementation's images/s on the same machine), extracted from
git into a temporary folder and run in the same invocation. Without git history, the baseline
rows are left out.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, 'bench', 'train_worker.py')
BASELINE_COMMIT = '436f5c8'
CONFIGS = {  # name: (resnet_depth, image_size, global batch, steps per timed block)
    'R18-CIFAR 32px b128': (18, 32, 128, 2),
    'R50 64px b32': (50, 64, 32, 3),
}


def machine():
  info = {'python': platform.python_version(), 'cpus': os.cpu_count()}
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      text = f.read()
    info['cpu'] = next(line.split(':', 1)[1].strip() for line in text.splitlines()
                       if line.startswith('model name'))
    flags = next(line for line in text.splitlines() if line.startswith('flags'))
    info['bf16_amx'] = [flag for flag in ('avx512_bf16', 'amx_bf16', 'amx_tile')
                        if f' {flag}' in flags]
  except (OSError, StopIteration):
    pass
  try:
    with open('/proc/meminfo', encoding='utf-8') as f:
      info['memory_gib'] = round(int(f.readline().split()[1]) / 2**20, 1)
  except (OSError, ValueError, IndexError):
    pass
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  info['tensorflow'] = importlib.metadata.version('tensorflow')
  return info


def extract_baseline():
  """The baseline commit's tree in a temporary folder, or None without git history."""
  target = tempfile.mkdtemp(prefix='simclr_baseline_')
  try:
    archive = subprocess.run(['git', '-C', REPO, 'archive', BASELINE_COMMIT, 'simclr_tf2'],
                             check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', target], input=archive, check=True)
  except (OSError, subprocess.CalledProcessError):
    return None
  return target


def measure(args):
  """Runs one worker process; its JSON result, or {'error': ...}."""
  process = subprocess.run([sys.executable, WORKER, json.dumps(args)], capture_output=True,
                           text=True, timeout=3600, check=False)
  lines = [line for line in process.stdout.splitlines() if line.startswith('{')]
  if process.returncode or not lines:
    tail = (process.stderr.strip().splitlines() or ['no output'])[-1]
    return {'error': tail}
  return json.loads(lines[-1])


def variants(options, baseline):
  rows = []
  for name, (depth, size, batch, steps) in CONFIGS.items():
    if options.quick and depth != 18:
      continue
    common = dict(resnet_depth=depth, image_size=size, batch=batch, steps=steps, blocks=2)
    if baseline:
      rows.append((name, 'baseline float32', dict(common, code=baseline, precision='float32',
                                                   jit=False)))
    for precision in ('float32', 'mixed_bfloat16'):
      for jit in (False, True):
        if jit and options.no_jit:
          continue
        label = precision + (' +XLA' if jit else '')
        rows.append((name, label, dict(common, code=REPO, precision=precision, jit=jit,
                                       profile=not jit and depth == 18)))
  return rows


def summarise(results):
  ok = [r for r in results if 'error' not in r]
  if not ok:
    return {'error': results[0]['error']}
  summary = {
      'images_per_s': statistics.median(v for r in ok for v in r['images_per_s']),
      'peak_rss_mib': max(r['peak_rss_mib'] for r in ok),
      'repeats': len(ok)}
  if 'warm_up_s' in ok[0]:
    summary['warm_up_s'] = statistics.median(r['warm_up_s'] for r in ok)
    summary['loss_fixed_batch'] = ok[0]['loss_fixed_batch']
  if 'profile_ms' in ok[0]:
    summary['profile_ms'] = {key: statistics.median(r['profile_ms'][key] for r in ok)
                             for key in ok[0]['profile_ms']}
  return summary


def input_pipeline_rows(options):
  rows = [('digits 32px b128 (in memory)', dict(code=REPO, input_only=True, image_size=32,
                                                 batch=128, steps=5, blocks=3))]
  rows.append(('TFDS (5000 PNG images, prepared here) 32px b128',
               dict(code=REPO, input_only=True, dataset='simclr_bench_images',
                    data_dir=tempfile.mkdtemp(prefix='simclr_bench_tfds_'), image_size=32,
                    batch=128, steps=5, blocks=3)))
  folder = options.image_folder
  if folder:
    rows.append((f'image folder {folder} 32px b128',
                 dict(code=REPO, input_only=True, dataset='image_folder_unlabeled',
                      data_dir=folder, image_size=32, batch=128, steps=5, blocks=3)))
  return rows


def export_table(options, baseline):
  """SavedModel export and PyTorch conversion times (bench/bench_export.py, models in a
  MirroredStrategy scope as after training), the baseline commit's export beside; table lines."""
  command = [sys.executable, os.path.join(REPO, 'bench', 'bench_export.py'), '--mirrored',
             f'--repeats={max(options.repeats, 1)}']
  if baseline:
    command.append(f'--baseline_export={os.path.join(baseline, "simclr_tf2", "export.py")}')
  process = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False,
                           cwd=REPO)
  if process.returncode:
    return [f'export: error: {(process.stderr.strip().splitlines() or ["no output"])[-1]}']
  lines = process.stdout.splitlines()
  return ['SavedModel export and conversion to PyTorch:'] + lines[lines.index(next(
      line for line in lines if line.startswith('Median'))):]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--json', default=os.path.join(REPO, 'bench', 'results.json'))
  parser.add_argument('--quick', action='store_true', help='R18 only')
  parser.add_argument('--no-jit', action='store_true', help='skip the XLA variants')
  parser.add_argument('--image-folder', help='also time the input pipeline on this folder '
                      '(unlabeled layout: FOLDER/train/*.png)')
  options = parser.parse_args()

  report = {'machine': machine(), 'baseline_commit': BASELINE_COMMIT, 'training': [],
            'input_pipeline': []}
  baseline = extract_baseline()
  rows = variants(options, baseline)
  results = {index: [] for index in range(len(rows))}
  for _ in range(options.repeats):
    for index, (_, _, args) in enumerate(rows):
      results[index].append(measure(args))
  print(f"machine: {json.dumps(report['machine'])}")
  print(f'{"config":22s} {"variant":24s} {"images/s":>9s} {"x base":>7s} {"warm-up s":>9s} '
        f'{"peak MiB":>8s}  loss(fixed batch)')
  base_rate = {}
  for index, (config, label, _) in enumerate(rows):
    summary = summarise(results[index])
    report['training'].append({'config': config, 'variant': label, **summary})
    if 'error' in summary:
      print(f'{config:22s} {label:24s} error: {summary["error"]}')
      continue
    if label.startswith('baseline'):
      base_rate[config] = summary['images_per_s']
    ratio = summary['images_per_s'] / base_rate[config] if config in base_rate else float('nan')
    summary['ratio_to_baseline'] = ratio
    print(f'{config:22s} {label:24s} {summary["images_per_s"]:9.1f} {ratio:7.2f} '
          f'{summary["warm_up_s"]:9.1f} {summary["peak_rss_mib"]:8.0f}  '
          f'{summary["loss_fixed_batch"]:.7f}')
    if 'profile_ms' in summary:
      print(f'{"":22s}   step profile (ms, one batch): ' + ', '.join(
          f'{k} {v:.0f}' for k, v in summary['profile_ms'].items()))
  print('input pipeline alone:')
  for name, args in input_pipeline_rows(options):
    summary = summarise([measure(args) for _ in range(options.repeats)])
    report['input_pipeline'].append({'source': name, **summary})
    print(f'  {name:40s} ' + (f'{summary["images_per_s"]:9.1f} images/s' if 'error' not in
                                summary else f'error: {summary["error"]}'))
  report['export'] = export_table(options, baseline)
  print('\n'.join(report['export']))
  with open(options.json, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  print(f'written: {options.json}')


if __name__ == '__main__':
  main()
