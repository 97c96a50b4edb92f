#!/usr/bin/env bash
# Builds the container images the integration suite runs on when no registry can be reached
# (CI here): a PostgreSQL image made from Debian packages, with an entrypoint compatible with
# the official image, and a FROM-scratch image of cmd/kafkabroker (a kfake-based
# Kafka-protocol broker). Idempotent: an image that already exists is skipped; set
# FORCE=1 to rebuild.
#
#   scripts/build-images.sh            # both images
#   scripts/build-images.sh postgres   # one of them (postgres | kafkabroker)
#
# Image names (override by environment; the suite reads the same variables):
#   SAGABOX_IT_POSTGRES_IMAGE  default sagabox-local/postgres:15
#   SAGABOX_IT_KAFKA_IMAGE     default sagabox-local/kafkabroker:dev
#
# Needs: docker (daemon running), and for PostgreSQL debootstrap (root). The Debian mirror
# is taken from DEBIAN_MIRROR or the first URIs: line of /etc/apt/sources.list.d/debian.sources.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_IMAGE=${SAGABOX_IT_POSTGRES_IMAGE:-sagabox-local/postgres:15}
KAFKA_IMAGE=${SAGABOX_IT_KAFKA_IMAGE:-sagabox-local/kafkabroker:dev}
SUITE=${DEBIAN_SUITE:-bookworm}

TMP=$(mktemp -d /var/tmp/sagabox-images.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

have_image() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

build_postgres() {
  if have_image "$PG_IMAGE"; then echo "== $PG_IMAGE exists, skipping"; return; fi
  command -v debootstrap >/dev/null || { echo "build-images: debootstrap is missing; apt-get install debootstrap" >&2; exit 1; }
  local start=$SECONDS work=$TMP/postgres
  mkdir -p "$work"
  echo "== building $PG_IMAGE: debootstrap $SUITE with postgresql-15 from $(mirror)"
  debootstrap --variant=minbase --include=postgresql-15 "$SUITE" "$work/rootfs" "$(mirror)" >"$work/debootstrap.log" 2>&1 \
    || { tail -40 "$work/debootstrap.log" >&2; echo "build-images: debootstrap failed (log above)" >&2; exit 1; }
  local r="$work/rootfs"
  # The Debian package creates and starts a cluster of its own; the entrypoint makes one per container.
  rm -rf "$r"/var/lib/postgresql/15 "$r"/etc/postgresql/15 \
    "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* "$r"/usr/share/man/* \
    "$r"/usr/share/locale/*
  mkdir -p "$r/var/lib/postgresql/data" "$r/var/run/postgresql" "$r/docker-entrypoint-initdb.d"
  chroot "$r" chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
  install -m 0755 scripts/postgres-entrypoint.sh "$r/usr/local/bin/docker-entrypoint.sh"
  tar -C "$r" -c . | docker import \
    --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PGDATA=/var/lib/postgresql/data' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'EXPOSE 5432' \
    --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
    --change 'CMD ["postgres"]' \
    - "$PG_IMAGE" >/dev/null
  echo "== built $PG_IMAGE in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$PG_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

build_kafkabroker() {
  if have_image "$KAFKA_IMAGE"; then echo "== $KAFKA_IMAGE exists, skipping"; return; fi
  local start=$SECONDS ctx=$TMP/kafkabroker
  mkdir -p "$ctx"
  echo "== building $KAFKA_IMAGE from cmd/kafkabroker"
  # No -trimpath: it would miss the build cache that `make test` just filled.
  CGO_ENABLED=0 go build -ldflags '-s -w' -o "$ctx/kafkabroker" ./cmd/kafkabroker
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY kafkabroker /kafkabroker
VOLUME /data
EXPOSE 9092
ENTRYPOINT ["/kafkabroker"]
CMD ["-listen", "0.0.0.0", "-ports", "9092"]
DOCKERFILE
  # The legacy builder: BuildKit's buildx is not installed with Debian's docker.io.
  DOCKER_BUILDKIT=0 docker build -q -t "$KAFKA_IMAGE" "$ctx" >"$ctx/build.log" 2>&1 \
    || { cat "$ctx/build.log" >&2; echo "build-images: docker build of $KAFKA_IMAGE failed" >&2; exit 1; }
  echo "== built $KAFKA_IMAGE in $((SECONDS - start))s"
}

case "${1:-all}" in
  all)
    # debootstrap waits on the network and dpkg while go build uses the CPUs: run both at once.
    build_postgres & pg_pid=$!
    build_kafkabroker
    wait "$pg_pid" || exit 1
    ;;
  postgres) build_postgres ;;
  kafkabroker) build_kafkabroker ;;
  *) echo "usage: $0 [all|postgres|kafkabroker]" >&2; exit 2 ;;
esac
