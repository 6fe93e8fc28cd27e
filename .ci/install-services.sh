#!/usr/bin/env bash
# Install the servers the `services` tests start (memcached, redis-server, PostgreSQL) from
# Debian packages, only those whose binary is missing. Idempotent: exits 0 at once when all
# are present. Skip the tests instead with TIERCACHE_SKIP_SERVICES=1.
set -euo pipefail

have_postgres() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1
}

missing=()
command -v memcached >/dev/null 2>&1 || missing+=(memcached)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-services: memcached, redis-server and postgresql are present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-services: missing ${missing[*]} and no apt-get here; install them by hand" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi

echo "install-services: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged daemons; the tests start their own on free ports.
for service in memcached redis-server; do
    if command -v service >/dev/null 2>&1; then
        "${sudo[@]}" service "$service" stop >/dev/null 2>&1 || true
    fi
done
echo "install-services: done"
