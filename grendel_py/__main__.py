from grendel_py.cli import main

raise SystemExit(main())
