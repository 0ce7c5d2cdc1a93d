import sys

from jitkit.cli import main

sys.exit(main())
