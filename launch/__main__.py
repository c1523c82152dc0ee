"""`python -m launch [NAME]`: the path of a shipped launch script (slurm/train.sbatch, deepspeed_multinode.sh, ...),
or of the folder that holds them."""
import sys

from launch import script

try:
    print(script(sys.argv[1] if len(sys.argv) > 1 else ""))
except FileNotFoundError as err:
    print(f"odyssey: error: {err}", file=sys.stderr)
    sys.exit(2)
