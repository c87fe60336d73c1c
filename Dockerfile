# trainyard, CPU build: API and workers in one slim, non-root image with MNIST inside
# (and Fashion-MNIST when docker/data/fashion-mnist has it).
# Build: docker build -t trainyard .    Run: docker compose up

# The datasets first: checked (and, online, completed) in seconds, before any compile, so
# that a build that cannot succeed says so at once, naming the folder in the checkout to
# fill (docker/data/README.md). MNIST is required, Fashion-MNIST optional.
FROM rust:1.95-bookworm AS data
ARG DATA_OFFLINE=false
COPY docker/data /data
RUN sh /data/check.sh /data "$DATA_OFFLINE"

# The dependencies: the manifest alone, with an empty crate, so that editing the code does
# not rebuild Candle and the rest. The CUDA image can start from this stage's image
# (docker/Dockerfile.cuda, DEPS_IMAGE) and compile again only what its feature changes.
FROM rust:1.95-bookworm AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src

FROM deps AS build
COPY src src
COPY migrations migrations
# The font the PNG pictures embed (include_bytes!).
COPY assets assets
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/trainyard

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin trainyard \
    && install -d -o 10001 -m 0700 /var/lib/trainyard
COPY --from=build /src/target/release/trainyard /usr/local/bin/trainyard
COPY --from=data --chown=10001 /data /data
ENV TRAINYARD_DATA_DIR=/data \
    TRAINYARD_BIND=0.0.0.0:8080 \
    RUST_LOG=info
USER 10001
EXPOSE 8080
ENTRYPOINT ["trainyard"]
CMD ["serve"]
