"""spark-submit entry for the `score` stage; takes the same arguments as `loganomaly score`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("score", sys.argv[1:]))
