#!/bin/bash
# Builds local stand-ins for the base images the Dockerfiles and the compose file name
# (debian:bookworm-slim, rust:1.95-bookworm, postgres:16), under those names, for machines
# that reach no container registry. tests/compose.sh runs it only after `docker pull`
# fails, and says so; never use them where the real images can be pulled. Each carries
# the label org.trainyard.stand-in=true. Usage: make.sh [WORKDIR]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=${1:-$(mktemp -d)}; R=$W/rootfs; mkdir -p "$W"
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# 1. debian:bookworm-slim
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  debootstrap --variant=minbase bookworm "$R" "$MIRROR" >"$W/debootstrap.log"
  rm -f "$R"/var/cache/apt/archives/*.deb "$R"/etc/apt/sources.list; rm -rf "$R"/var/lib/apt/lists/*
  printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$MIRROR" \
    >"$R"/etc/apt/sources.list.d/debian.sources
  printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\nAPT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\nDir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n' \
    >"$R"/etc/apt/apt.conf.d/docker-clean
  printf 'Acquire::Languages "none";\n' >"$R"/etc/apt/apt.conf.d/docker-no-languages
  printf 'APT::AutoRemove::SuggestsImportant "false";\n' >"$R"/etc/apt/apt.conf.d/docker-autoremove-suggests
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    >"$R"/etc/dpkg/dpkg.cfg.d/docker
  rm -rf "$R"/usr/share/{man,info,locale}/* "$R"/var/cache/apt/*.bin "$R"/var/log/apt/*
  tar -C "$R" -c . | docker import -c 'CMD ["bash"]' -c 'LABEL org.trainyard.stand-in=true' - debian:bookworm-slim >/dev/null
fi
docker run --rm debian:bookworm-slim true

# 2. rust:1.95-bookworm, from the host's toolchain
if ! docker image inspect rust:1.95-bookworm >/dev/null 2>&1; then
  C=$W/rust-ctx; mkdir -p "$C/rustup/toolchains" "$C/cargo" "$C/ca"
  sysroot=$(rustc --print sysroot); tc=$(basename "$sysroot")
  cp -a "$sysroot" "$C/rustup/toolchains/$tc"; rm -rf "$C/rustup/toolchains/$tc/share/doc"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$tc" >"$C/rustup/settings.toml"
  cp -a "$(dirname "$(command -v cargo)")" "$C/cargo/bin"
  cp /usr/local/share/ca-certificates/*.crt "$C/ca/" 2>/dev/null || true
  cat >"$C/Dockerfile" <<'DOCKER'
FROM debian:bookworm-slim
LABEL org.trainyard.stand-in=true
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates pkg-config make \
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN chmod -R a+w /usr/local/rustup /usr/local/cargo && cargo --version
DOCKER
  docker build -q -t rust:1.95-bookworm "$C" >/dev/null
fi

# 3. postgres:16 (Debian's PostgreSQL 15)
if ! docker image inspect postgres:16 >/dev/null 2>&1; then
  C=$W/pg-ctx; mkdir -p "$C"; cp "$HERE/postgres-entrypoint.sh" "$C/docker-entrypoint.sh"
  cat >"$C/Dockerfile" <<'DOCKER'
FROM debian:bookworm-slim
LABEL org.trainyard.stand-in=true
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/run/postgresql /var/lib/postgresql/data \
    && chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql && chmod 2777 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod +x /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
DOCKER
  docker build -q -t postgres:16 "$C" >/dev/null
fi
echo "stand-in images ready: debian:bookworm-slim rust:1.95-bookworm postgres:16 (Debian PostgreSQL 15)"
