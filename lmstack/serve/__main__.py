import sys

from lmstack.cli.serve import main

sys.exit(main())
