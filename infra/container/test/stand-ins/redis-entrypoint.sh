#!/bin/sh
# As the official image: own /data, drop root, and turn protected mode off.
set -e
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$@" --protected-mode no
fi
if [ "$1" = redis-server ]; then
    exec "$@" --protected-mode no
fi
exec "$@"
