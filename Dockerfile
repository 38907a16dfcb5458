# A small static image of kptune: the binary alone (no shell, no libc), built first by
#   make image   (CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o bin/kptune-static ./cmd/kptune)
FROM scratch
COPY bin/kptune-static /kptune
USER 0
ENTRYPOINT ["/kptune"]
CMD ["agent"]
