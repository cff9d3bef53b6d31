import sys

from deepseek_serve.bench.cli import main

sys.exit(main())
