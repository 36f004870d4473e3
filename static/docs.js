// Boots the vendored Swagger UI on /docs with this server's /openapi.json. A module runs
// after the deferred bundle, so window.SwaggerUIBundle is there.
const root = document.getElementById("swagger-ui");
window.SwaggerUIBundle({
  url: root.dataset.specUrl,
  domNode: root,
  deepLinking: true,
  // The public validator badge would fetch from swagger.io: nothing leaves this server.
  validatorUrl: null,
});
