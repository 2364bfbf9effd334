# The plugin SDK that `cmake --install` lays down next to dmnist-run and the
# built-in plugins, so plugins can be written and built out of tree:
#   <prefix>/include/dmnist/*.h                 the plugin ABI headers
#   <prefix>/lib/cmake/dmnist/                  find_package(dmnist): dmnist::headers,
#                                               dmnist_add_plugin(NAME SOURCES ...)
#   <prefix>/lib/pkgconfig/dmnist.pc            cflags, pluginsdir, plugin_check
#   <prefix>/lib/dmnist/plugins/                where the installed dmnist-run looks
# Every path in these files is relative to where they are installed, so a
# prefix can be staged with --prefix or DESTDIR and moved afterwards.
include(CMakePackageConfigHelpers)

set(DMNIST_PLUGIN_RELDIR ${CMAKE_INSTALL_LIBDIR}/dmnist/plugins) # as dm_add_plugin installs
set(DMNIST_CMAKE_RELDIR ${CMAKE_INSTALL_LIBDIR}/cmake/dmnist)
set(DMNIST_PKGCONFIG_RELDIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# Plugins see only the headers: no library to link.
add_library(dmnist_headers INTERFACE)
add_library(dmnist::headers ALIAS dmnist_headers)
target_include_directories(dmnist_headers INTERFACE
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
set_target_properties(dmnist_headers PROPERTIES EXPORT_NAME headers)
install(TARGETS dmnist_headers EXPORT dmnistTargets COMPONENT ${DMNIST_SDK_COMPONENT})
install(EXPORT dmnistTargets NAMESPACE dmnist:: DESTINATION ${DMNIST_CMAKE_RELDIR}
  COMPONENT ${DMNIST_SDK_COMPONENT})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/dmnistConfig.cmake.in
  ${CMAKE_BINARY_DIR}/sdk/dmnistConfig.cmake
  INSTALL_DESTINATION ${DMNIST_CMAKE_RELDIR}
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_BINDIR DMNIST_PLUGIN_RELDIR)
# 0.x: a new minor version may change the ABI major, so only x.y.* match.
write_basic_package_version_file(${CMAKE_BINARY_DIR}/sdk/dmnistConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES
  ${CMAKE_BINARY_DIR}/sdk/dmnistConfig.cmake
  ${CMAKE_BINARY_DIR}/sdk/dmnistConfigVersion.cmake
  ${PROJECT_SOURCE_DIR}/cmake/dmnistPlugin.cmake
  DESTINATION ${DMNIST_CMAKE_RELDIR} COMPONENT ${DMNIST_SDK_COMPONENT})

# pkg-config: the prefix is found from the .pc file's own folder.
file(RELATIVE_PATH DMNIST_PC_TO_PREFIX /prefix/${DMNIST_PKGCONFIG_RELDIR} /prefix)
string(REGEX REPLACE "/$" "" DMNIST_PC_TO_PREFIX "${DMNIST_PC_TO_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/dmnist.pc.in ${CMAKE_BINARY_DIR}/sdk/dmnist.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/sdk/dmnist.pc DESTINATION ${DMNIST_PKGCONFIG_RELDIR}
  COMPONENT ${DMNIST_SDK_COMPONENT})

# The worked examples of docs/writing-a-layer-plugin.md.
if(EXISTS ${PROJECT_SOURCE_DIR}/docs/examples/plugins)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/examples/plugins
    DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples COMPONENT ${DMNIST_SDK_COMPONENT} PATTERN build EXCLUDE)
endif()
