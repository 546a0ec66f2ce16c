# dinp: a Linux executable (static, or linked with the common libraries of Debian's base).
FROM {{ base }}
WORKDIR /app
COPY app/ /app/
ENV PORT=8080 HOME=/tmp
USER 65534:65534
CMD {{ cmd }}
