# dinp base for static sites: Debian's static busybox in an otherwise empty image (~2 MB).
FROM {{ debian }} AS busybox
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y busybox-static && rm -rf /var/lib/apt/lists/*

FROM scratch
COPY --from=busybox /bin/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /tmp /app /etc && chmod 1777 /tmp \
 && printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >/etc/passwd \
 && printf 'root:x:0:\nnogroup:x:65534:\n' >/etc/group
ENV PATH=/bin
CMD ["/bin/sh"]
