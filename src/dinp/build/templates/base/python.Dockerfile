# dinp base for python apps: Debian's python3, and pip for apps with a requirements.txt.
FROM {{ debian }}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /app
