import sys

from dinoserve.cli import main

sys.exit(main())
