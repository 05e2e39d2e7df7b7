"""The zoo builder's process pool (training/build.py)."""
import subprocess
import sys
import time


def test_pool_worker_ends_when_its_parent_is_gone():
    """A worker whose recorded parent is no longer its parent (the parent was killed outright and the worker
    re-parented) exits instead of training on unseen; one whose parent lives keeps running."""
    code = ("import sys, time; from tprune_core.training.build import _exit_with_parent; "
            "_exit_with_parent(int(sys.argv[1]), every=0.05); time.sleep(30)")
    orphan = subprocess.Popen([sys.executable, "-c", code, "1"])       # pid 1 is never this test's pid
    t = time.monotonic()
    assert orphan.wait(timeout=25) == 3 and time.monotonic() - t < 25
    import os
    child = subprocess.Popen([sys.executable, "-c", code, str(os.getpid())])
    try:
        time.sleep(3)     # well past the import and many watch periods
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
