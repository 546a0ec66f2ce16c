"""`dinp build`: an app's built artifact becomes an image in the registry.

The modules, in the order a build uses them:

- archive.py: unpacking the artifact safely, limits checked while it streams;
- types.py: telling the app's type and what starts it;
- dockerfiles.py: the Dockerfile templates in templates/ and filling them;
- engine.py: the Docker engine and registry as builds use them (build, tag, push, pull);
- builder.py: `build()`, the whole job, step by step;
- base_images.py: `dinp build base-images`, every type's base image made from Debian;
- remote.py: `dinp build --remote`, the client of a build service;
- service.py: `dinp build serve`, the build service.

Connecting to an engine and parsing image references are shared with the agent, in
dinp/docker_engine.py. commands/build.py holds the CLI verbs over this package.
"""
