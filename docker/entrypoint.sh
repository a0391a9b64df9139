#!/bin/sh
# The images' entrypoint. Secrets arrive as files (compose `secrets:` under /run/secrets):
# for every NAME_FILE in the environment, NAME is exported with that file's content (a final
# newline dropped) and NAME_FILE removed, so the config's ${NAME} finds it. Setting both NAME
# and NAME_FILE is an error, and so is a NAME_FILE that cannot be read.
# Then the command runs: `visionflow ARGS` unless the first argument is a program on PATH
# (`run -c ...`, `api -c ...`, `--version` go to visionflow; `sh` or `env` run as they are).
set -eu
for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=.*/\1/p'); do
  eval "path=\${${name}_FILE-}"
  [ -n "$path" ] || continue  # a line of a multi-line value, not a variable
  if eval "[ -n \"\${${name}+set}\" ]"; then
    echo "visionflow-entrypoint: both $name and ${name}_FILE are set; set one" >&2
    exit 2
  fi
  if [ ! -f "$path" ] || [ ! -r "$path" ]; then
    echo "visionflow-entrypoint: ${name}_FILE=$path is not a readable file" >&2
    exit 2
  fi
  value=$(cat "$path")
  export "$name=$value"
  unset "${name}_FILE"
done
if [ "$#" -eq 0 ] || ! command -v "$1" >/dev/null 2>&1; then
  set -- visionflow "$@"
fi
exec "$@"
