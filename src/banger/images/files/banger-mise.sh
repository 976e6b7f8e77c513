# banger: activate mise (https://mise.jdx.dev) in interactive bash login shells.
if [ -n "${BASH_VERSION:-}" ] && [ -x /usr/local/bin/mise ]; then
    case "$-" in *i*) eval "$(/usr/local/bin/mise activate bash)" ;; esac
fi
