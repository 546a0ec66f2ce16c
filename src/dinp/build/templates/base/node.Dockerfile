# dinp base for node apps: Debian's nodejs.
FROM {{ debian }}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y nodejs ca-certificates \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /app
