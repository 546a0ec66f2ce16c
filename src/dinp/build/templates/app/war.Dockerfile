# dinp: a Java web app on Tomcat at context root /. The .war arrives unpacked in app/;
# dinp-tomcat (from the base image) starts Tomcat on $PORT.
FROM {{ base }}
COPY app/ /var/lib/tomcat10/webapps/ROOT/
ENV PORT=8080
USER tomcat
CMD {{ cmd }}
