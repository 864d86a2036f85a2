# Builds the one `kiln` binary and the guest kernel. Used by docker-compose.yml.
FROM golang:1.26-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc make musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make kernel examples && CGO_ENABLED=0 go build -o /out/kiln ./cmd/kiln && cp build/kernel/kiln-kernel.elf /out/ \
    && cp build/examples/hello-c/hello /out/hello

FROM debian:bookworm-slim
COPY --from=build /out/kiln /out/kiln-kernel.elf /usr/local/bin/
COPY --from=build /out/hello /usr/share/kiln/examples/hello
ENTRYPOINT ["/usr/local/bin/kiln"]
