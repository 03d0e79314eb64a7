"""How often the distributed page's example aborts at exit: N torchrun launches, P at a time.

Runs the complete example of docs/distributed.md (two gloo ranks on CPU) ``--runs`` times, with
``--parallel`` launches at once so that the ranks' threads compete for the cores, and prints how
many launches failed and how many of those were a rank aborting after its work was done
("terminate called without an active exception", SIGABRT: a process group that outlived the
script; see ``ewc/_process_group_exit.py``). To measure another copy of ewc, put its ``src``
first on ``PYTHONPATH``.

    python benchmarks/torchrun_exit.py --runs 150 --parallel 3
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
ABORT = "terminate called without an active exception"


def launch(script: Path) -> tuple[int, str]:
    """One ``torchrun --standalone --nproc-per-node=2`` of ``script``: exit status and output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*command, "--nproc-per-node=2", str(script)], capture_output=True, text=True, timeout=600
    )
    return done.returncode, done.stdout + done.stderr


def main() -> None:
    """Parse the arguments, launch the example, print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60, help="launches in all")
    parser.add_argument("--parallel", type=int, default=3, help="launches at a time")
    args = parser.parse_args()
    if args.runs < 1 or args.parallel < 1:
        parser.error("--runs and --parallel must be at least 1")
    (code,) = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "ewc_ddp.py"
        script.write_text(code, encoding="utf-8")
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda _: launch(script), range(args.runs)))
    failed = [output for status, output in results if status != 0]
    aborted = [output for output in failed if ABORT in output]
    print(f"{args.runs} launches, {args.parallel} at a time: {len(failed)} failed")
    print(f"  aborted at exit ({ABORT!r}): {len(aborted)}")
    if len(failed) > len(aborted):
        other = next(output for output in failed if ABORT not in output)
        print("  another failure's output ends:\n" + other[-2000:])


if __name__ == "__main__":
    main()
