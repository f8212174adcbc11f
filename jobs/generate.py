"""spark-submit entry for the `generate` stage; takes the same arguments as `loganomaly generate`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("generate", sys.argv[1:]))
