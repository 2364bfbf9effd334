# .deb packages by component (cpack -G DEB in the build folder; scripts/package.sh
# builds them all, docs/packaging.md tells why they are split this way):
#
#   CPU build (no CUDA toolkit, or -DDMNIST_WITH_CUDA=OFF):
#     dmnist       component runtime: dmnist-run, dmnist-bench-comm,
#                  dmnist-plugin-check, dmnist-export (where built), the plugins
#                  in <libdir>/dmnist/plugins. Dependencies: dpkg-shlibdeps.
#     dmnist-dev   component sdk: include/dmnist, the CMake package, dmnist.pc,
#                  dmnist-comm-check and dmnist-comm-job, the example plugins.
#                  Depends on dmnist (the same version) and dpkg-shlibdeps'.
#   CUDA build:
#     dmnist-cuda  component cuda: the CUDA build's dmnist-run, tools and every
#                  plugin (those with CUDA code built with it) under
#                  /usr/lib/dmnist-cuda (its own prefix: dmnist-run finds the
#                  plugins beside itself), /usr/bin/dmnist-run-cuda a link to it.
#                  dmnist-run itself links libcudart there, so this cannot be
#                  only the plugins. NVIDIA's libraries are no Debian packages:
#                  no dpkg-shlibdeps; it depends by hand on dmnist (which
#                  brings the Debian libraries both builds use).
#
# Everything installed is root's and 0755/0644 (dpkg writes the owner), so
# the plugin trust checks (docs/plugin-abi.md) pass for the installed files.

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME dmnist)
set(CPACK_PACKAGE_VENDOR dmnist)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "dmnist maintainers <dmnist@invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "data-parallel MNIST training with INI experiments and plugins")
set(CPACK_PACKAGE_DIRECTORY ${CMAKE_BINARY_DIR}/packages CACHE PATH "where cpack writes the .deb files")
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS OFF)
# A umask of 002 must not leave group-writable folders in the package: the
# plugin loader refuses a plugin folder anyone but root may change.
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
  OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
set(_dm_deb_version "${PROJECT_VERSION}-${CPACK_DEBIAN_PACKAGE_RELEASE}")

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME dmnist)
set(CPACK_COMPONENT_RUNTIME_DISPLAY_NAME "dmnist runtime")
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION
  "data-parallel MNIST training: dmnist-run and its plugins (CPU)
 dmnist-run trains the models of INI experiment files on MNIST, Fashion-MNIST
 or synthetic data, over ranks that average their gradients (local, MPI, Gloo).
 Layers, optimizers, datasets and comm backends are plugins, loaded from
 /usr/lib/<arch>/dmnist/plugins. With dmnist-bench-comm, dmnist-plugin-check
 and, where built, dmnist-export (ONNX, safetensors).")
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION science)

set(CPACK_DEBIAN_SDK_PACKAGE_NAME dmnist-dev)
set(CPACK_COMPONENT_SDK_DISPLAY_NAME "dmnist plugin SDK")
set(CPACK_COMPONENT_SDK_DESCRIPTION
  "data-parallel MNIST training: plugin SDK
 The headers of the dmnist plugin ABI, find_package(dmnist) (dmnist::headers,
 dmnist_add_plugin) and dmnist.pc, to build plugins out of tree, with the
 comm backend harness (dmnist-comm-check, dmnist-comm-job) and the example
 plugins of the documentation.")
set(CPACK_DEBIAN_SDK_PACKAGE_DEPENDS "dmnist (= ${_dm_deb_version})")
set(CPACK_DEBIAN_SDK_PACKAGE_SECTION libdevel)

set(CPACK_DEBIAN_CUDA_PACKAGE_NAME dmnist-cuda)
set(CPACK_COMPONENT_CUDA_DISPLAY_NAME "dmnist CUDA build")
set(CPACK_COMPONENT_CUDA_DESCRIPTION
  "data-parallel MNIST training: CUDA build (needs NVIDIA's CUDA libraries)
 dmnist-run and plugins built with CUDA (device = cuda, the nccl backend),
 in /usr/lib/dmnist-cuda; run them as dmnist-run-cuda. They need NVIDIA's
 libraries, which are not Debian packages and so are not declared as
 dependencies: the CUDA runtime, cuBLAS, cuDNN and NCCL (libcudart.so,
 libcublas.so, libcudnn.so, libnccl.so of the CUDA version this was built
 with), from NVIDIA's CUDA repository or the CUDA toolkit, on the loader's path.")
set(CPACK_DEBIAN_CUDA_PACKAGE_SHLIBDEPS OFF)
set(CPACK_DEBIAN_CUDA_PACKAGE_DEPENDS "dmnist (= ${_dm_deb_version})")
set(CPACK_DEBIAN_CUDA_PACKAGE_SECTION contrib/science)

if(DMNIST_HAVE_CUDA)
  set(CPACK_COMPONENTS_ALL cuda)
  # Its own prefix, so that it sits beside the CPU package: the layout under
  # it is the usual one (bin/, <libdir>/dmnist/plugins), which is what
  # dmnist-run looks for relative to itself.
  set(CPACK_PACKAGING_INSTALL_PREFIX /usr/lib/dmnist-cuda)
  file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/deb)
  file(CREATE_LINK /usr/lib/dmnist-cuda/${CMAKE_INSTALL_BINDIR}/dmnist-run
    ${CMAKE_BINARY_DIR}/deb/dmnist-run-cuda SYMBOLIC)
  # ../../bin from /usr/lib/dmnist-cuda: /usr/bin. Only for the package; a
  # `cmake --install` lays it down only when asked for the cuda component.
  install(FILES ${CMAKE_BINARY_DIR}/deb/dmnist-run-cuda DESTINATION ../../bin
    COMPONENT cuda EXCLUDE_FROM_ALL)
else()
  set(CPACK_COMPONENTS_ALL runtime sdk)
  set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
endif()

include(CPack)
