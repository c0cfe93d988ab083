#!/bin/sh
# Run the Procfile process named by the first argument (web, worker, beat, flower, bounces,
# release), so the image, the Procfile and compose.yaml share one definition of each process.
# Any other command (massmailer status, sh, …) runs as given.
set -eu
cd "$(dirname "$0")/.."  # the application directory (/app in the image)
if [ "$#" -eq 1 ]; then
  line=$(sed -n "s/^$1: *//p" Procfile)
  if [ -n "$line" ]; then
    exec sh -c "exec $line"
  fi
fi
exec "$@"
