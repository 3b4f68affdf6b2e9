from passk_companion.cli import main

raise SystemExit(main())
