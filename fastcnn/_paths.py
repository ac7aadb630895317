"""Where fastcnn finds its files, in a source checkout and in an installed wheel."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# kernels/ sits at the top of the repository; a wheel installs it as fastcnn/_kernels.
_REPO_KERNELS = PACKAGE_DIR.parent / "kernels"
KERNEL_DIR = _REPO_KERNELS if _REPO_KERNELS.is_dir() else PACKAGE_DIR / "_kernels"
DATA_DIR = PACKAGE_DIR / "data"
