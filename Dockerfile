# trainyard, CPU build: API and workers in one slim, non-root image with MNIST inside.
# Build: docker build -t trainyard .    Run: docker compose up

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependency layer: the manifest alone, with an empty crate, so that editing the code does
# not rebuild Candle and the other dependencies.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src src
COPY migrations migrations
# The font the PNG pictures embed (include_bytes!).
COPY assets assets
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/trainyard
# MNIST and Fashion-MNIST into the image, each file checked against its SHA-256. Files in
# docker/data/<dataset>/ are taken as they are; only missing ones are downloaded, and with
# DATA_OFFLINE=true none are (the build fails naming the file instead): see docker/data.
ARG DATA_OFFLINE=false
COPY docker/data /data
RUN if [ "$DATA_OFFLINE" = true ]; then set -- --no-download; fi \
    && target/release/trainyard fetch-data mnist,fashion-mnist --data-dir /data "$@" \
    && rm -f /data/README.md

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin trainyard \
    && install -d -o 10001 -m 0700 /var/lib/trainyard
COPY --from=build /src/target/release/trainyard /usr/local/bin/trainyard
COPY --from=build --chown=10001 /data /data
ENV TRAINYARD_DATA_DIR=/data \
    TRAINYARD_BIND=0.0.0.0:8080 \
    RUST_LOG=info
USER 10001
EXPOSE 8080
ENTRYPOINT ["trainyard"]
CMD ["serve"]
