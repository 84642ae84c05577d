import sys

from vfm_flower.cli import main

sys.exit(main())
