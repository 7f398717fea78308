from mpipipe.cli import main

raise SystemExit(main())
