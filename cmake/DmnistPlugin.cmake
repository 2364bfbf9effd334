# dm_add_plugin(NAME SOURCES a.c ... [CUDA_SOURCES k.cu ...] [LIBS lib ...])
#
# Builds plugin NAME as a loadable module `dm_NAME.so` into the build tree's
# plugin folder (where dmnist-run looks by default) and installs it. CUDA
# sources are compiled in only when the toolkit is present; the C sources
# then see DM_WITH_CUDA=1. The plugin sees only include/dmnist/.
function(dm_add_plugin NAME)
  cmake_parse_arguments(P "" "" "SOURCES;CUDA_SOURCES;LIBS;CUDA_LIBS" ${ARGN})
  set(target dm_${NAME})
  set(srcs ${P_SOURCES})
  set(sig "cpu")
  if(DMNIST_HAVE_CUDA AND P_CUDA_SOURCES)
    list(APPEND srcs ${P_CUDA_SOURCES})
  endif()
  add_library(${target} MODULE ${srcs})
  set_target_properties(${target} PROPERTIES
    PREFIX "" OUTPUT_NAME ${target}
    LIBRARY_OUTPUT_DIRECTORY ${DMNIST_BUILD_PLUGIN_DIR}
    C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden CUDA_VISIBILITY_PRESET hidden)
  # the plugin's own folder too: dmnist/cpu_isa_copies.h includes its kernel headers
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/include ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${target} PRIVATE ${P_LIBS})
  target_link_options(${target} PRIVATE -Wl,--no-undefined)
  if(DMNIST_HAVE_CUDA AND P_CUDA_SOURCES)
    target_compile_definitions(${target} PRIVATE DM_WITH_CUDA=1)
    target_link_libraries(${target} PRIVATE CUDA::cudart ${P_CUDA_LIBS})
    set_target_properties(${target} PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror --Werror all-warnings>)
    # "\073" is the C escape for ";": a plain ";" would split the definition
    # into two list items (two -D flags)
    set(sig "cpu\\073cuda${CUDAToolkit_VERSION_MAJOR}")
  endif()
  target_compile_definitions(${target} PRIVATE DM_PLUGIN_BUILD_SIGNATURE="${sig}")
  install(TARGETS ${target} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/dmnist/plugins)
endfunction()
