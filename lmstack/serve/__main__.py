import sys

from lmstack.serve.cli import main

sys.exit(main())
