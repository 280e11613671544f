from lifelong_rec.cli import main

raise SystemExit(main())
