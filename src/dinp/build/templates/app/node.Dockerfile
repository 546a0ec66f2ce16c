# dinp: a Node.js app with its node_modules/ (if any) included.
FROM {{ base }}
WORKDIR /app
COPY app/ /app/
ENV PORT=8080 HOME=/tmp NODE_ENV=production
USER 65534:65534
CMD {{ cmd }}
