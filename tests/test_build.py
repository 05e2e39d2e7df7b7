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


def test_the_printed_zoo_table_names_each_rows_method():
    """Three fine-tunes at one keep rate differ only by method: the table must say which row is which."""
    from tprune_core.training.zoo import format_summary
    row = dict(family="ast", dataset="speechcommands", role="prune", keep_rate=0.62, n_seeds=3, test_acc_mean=0.7,
               test_acc_std=0.01, val_acc_mean=0.7, test_gmacs=0.169, train_seconds_mean=233.0)
    text = format_summary([dict(row, method=m) for m in ("topk", "random", "mean")]
                          + [dict(row, role="base", method=None, keep_rate=1.0)])
    lines = text.splitlines()
    assert "method" in lines[0] and len(lines) == 5
    assert [ln.split()[3] for ln in lines[1:]] == ["topk", "random", "mean", "-"]
