"""`fastrnn.kernels` in a source checkout.

The Triton kernels live in kernels/ at the repository root and are installed as `fastrnn.kernels`
(pyproject.toml, `wheel.packages`): a wheel holds fastrnn/kernels/, and an editable install maps the name
to kernels/ with an import hook of its own. A checkout used through PYTHONPATH alone has neither: a GPU
machine running scripts/gpu_check.sh on a copy of the tree, or a second checkout (a git worktree) beside an
editable install of the first, whose hook would serve the *other* checkout's kernels. `install()` puts a
finder first on sys.meta_path that serves `fastrnn.kernels` from the kernels/ beside this fastrnn package,
exactly where that package has no kernels/ of its own and the directory beside it holds kernels/__init__.py
(a checkout); an installed wheel is left alone. Nothing is imported until `fastrnn.kernels` is (the
kernels read TRITON_INTERPRET at import)."""
import importlib.abc
import importlib.util
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
KERNELS = PACKAGE.parent / "kernels"
NAME = "fastrnn.kernels"


class KernelsFinder(importlib.abc.MetaPathFinder):
    """Finds `fastrnn.kernels` (the package; its submodules are found through its __path__) in KERNELS."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(NAME, KERNELS / "__init__.py",
                                                      submodule_search_locations=[str(KERNELS)])


def is_checkout() -> bool:
    """fastrnn/ without kernels/ of its own, beside a kernels/ package: a source checkout."""
    return not (PACKAGE / "kernels").exists() and (KERNELS / "__init__.py").is_file()


def install() -> bool:
    """Puts KernelsFinder first on sys.meta_path in a checkout (once); True when it is there."""
    if not is_checkout():
        return False
    if not any(isinstance(f, KernelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, KernelsFinder())
    return True
