from lmstack.cli import main

raise SystemExit(main())
