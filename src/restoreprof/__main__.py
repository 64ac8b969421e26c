from restoreprof.launcher import main

raise SystemExit(main())
