"""spark-submit entry for the `featurize` stage; takes the same arguments as `loganomaly featurize`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("featurize", sys.argv[1:]))
