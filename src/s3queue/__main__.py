"""``python -m s3queue`` runs the command line."""

from s3queue.ops.cli import main

main()
