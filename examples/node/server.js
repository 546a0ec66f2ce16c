// dinp's node example: no dependencies, listens on $PORT.
"use strict";
const http = require("http");

const port = Number(process.env.PORT || 8080);
const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end(`hello from node ${process.version} (app ${process.env.DINP_APP || "?"})\n`);
});
server.listen(port, () => console.log(`listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
