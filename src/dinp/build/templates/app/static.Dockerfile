# dinp: a static site served from /app by busybox httpd.
FROM {{ base }}
WORKDIR /app
COPY app/ /app/
ENV PORT=8080 HOME=/tmp
USER 65534:65534
CMD {{ cmd }}
