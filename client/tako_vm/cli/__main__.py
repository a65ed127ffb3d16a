"""`python -m tako_vm.cli`: the same as the `tako-vm` console script."""

import sys

from tako_vm.cli import main

sys.exit(main())
