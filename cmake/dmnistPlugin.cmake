# dmnist_add_plugin(NAME SOURCES a.c ... [CUDA_SOURCES k.cu ...] [LIBS lib ...]
#                   [OUTPUT_DIRECTORY dir] [NO_INSTALL])
#
# The installed twin of the in-tree dm_add_plugin: builds plugin NAME as the
# loadable module dm_NAME.so into OUTPUT_DIRECTORY (default
# ${CMAKE_BINARY_DIR}/plugins, so `plugin_path = build/plugins` in an INI file
# next to the project finds it) and installs it into
# <prefix>/${dmnist_PLUGIN_INSTALL_DIR}. The module sees only the dmnist
# headers, exports only what DM_EXPORT marks, must resolve every symbol at
# link time, and stays mapped after dlclose (-z nodelete). CUDA_SOURCES are compiled in when the calling project has
# enabled CUDA (project(... LANGUAGES C CUDA)); the C sources then see
# DM_WITH_CUDA=1. DM_PLUGIN_BUILD_SIGNATURE is "cpu" or "cpu;cudaN".
function(dmnist_add_plugin NAME)
  cmake_parse_arguments(P "NO_INSTALL" "OUTPUT_DIRECTORY" "SOURCES;CUDA_SOURCES;LIBS" ${ARGN})
  if(NOT P_SOURCES)
    message(FATAL_ERROR "dmnist_add_plugin(${NAME}): no SOURCES given")
  endif()
  if(P_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "dmnist_add_plugin(${NAME}): unknown arguments: ${P_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT P_OUTPUT_DIRECTORY)
    set(P_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/plugins)
  endif()
  set(target dm_${NAME})
  set(srcs ${P_SOURCES})
  set(sig "cpu")
  get_property(_dm_langs GLOBAL PROPERTY ENABLED_LANGUAGES)
  set(_dm_cuda OFF)
  if(P_CUDA_SOURCES AND "CUDA" IN_LIST _dm_langs)
    find_package(CUDAToolkit REQUIRED)
    list(APPEND srcs ${P_CUDA_SOURCES})
    set(_dm_cuda ON)
    set(sig "cpu;cuda${CUDAToolkit_VERSION_MAJOR}")
  elseif(P_CUDA_SOURCES)
    message(STATUS "dmnist_add_plugin(${NAME}): CUDA is not enabled in this project; CPU only")
  endif()

  add_library(${target} MODULE ${srcs})
  set_target_properties(${target} PROPERTIES
    PREFIX "" OUTPUT_NAME ${target} SUFFIX ".so"
    LIBRARY_OUTPUT_DIRECTORY ${P_OUTPUT_DIRECTORY}
    C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden CUDA_VISIBILITY_PRESET hidden)
  target_link_libraries(${target} PRIVATE dmnist::headers ${P_LIBS})
  if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang" AND NOT APPLE)
    # Unresolved symbols fail the link, not dlopen. nodelete: dlclose never
    # unmaps the plugin or what it pulled in (libgomp's idle worker threads
    # would otherwise run unmapped code at exit).
    target_link_options(${target} PRIVATE -Wl,--no-undefined -Wl,-z,nodelete)
  endif()
  if(_dm_cuda)
    target_compile_definitions(${target} PRIVATE DM_WITH_CUDA=1)
    target_link_libraries(${target} PRIVATE CUDA::cudart)
    # One shared CUDA runtime for every plugin in the process.
    set_target_properties(${target} PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
  endif()
  target_compile_definitions(${target} PRIVATE DM_PLUGIN_BUILD_SIGNATURE="${sig}")
  if(NOT P_NO_INSTALL)
    install(TARGETS ${target} LIBRARY DESTINATION ${dmnist_PLUGIN_INSTALL_DIR})
  endif()
endfunction()

# dmnist_add_plugin_test(NAME [TEST_NAME name] [ARGS checker options ...])
#
# Registers `dmnist-plugin-check [ARGS] dm_NAME.so` as a ctest test (named
# plugin_check_NAME unless TEST_NAME says otherwise) for a plugin built with
# dmnist_add_plugin(NAME ...): the installed checker loads it as dmnist-run
# does and exits non-zero on any failed row. ARGS are the checker's options,
# e.g. ARGS --params "path=${CMAKE_CURRENT_SOURCE_DIR}/data" --seed 7.
# Call enable_testing() first.
function(dmnist_add_plugin_test NAME)
  cmake_parse_arguments(T "" "TEST_NAME" "ARGS" ${ARGN})
  if(T_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "dmnist_add_plugin_test(${NAME}): unknown arguments: ${T_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT TARGET dm_${NAME})
    message(FATAL_ERROR "dmnist_add_plugin_test(${NAME}): no target dm_${NAME}; call dmnist_add_plugin(${NAME} ...) first")
  endif()
  if(NOT dmnist_PLUGIN_CHECK_EXECUTABLE)
    message(FATAL_ERROR "dmnist_add_plugin_test(${NAME}): dmnist_PLUGIN_CHECK_EXECUTABLE is not set (find_package(dmnist) sets it)")
  endif()
  if(NOT T_TEST_NAME)
    set(T_TEST_NAME plugin_check_${NAME})
  endif()
  add_test(NAME ${T_TEST_NAME}
    COMMAND ${dmnist_PLUGIN_CHECK_EXECUTABLE} ${T_ARGS} $<TARGET_FILE:dm_${NAME}>)
endfunction()

# dmnist_add_comm_test(NAME BACKEND NP [LAUNCHER local|mpi] [TIMEOUT s]
#                      [JOB_ARGS dmnist-comm-job options ...] [ARGS dmnist-comm-check options ...])
#
# Registers a ctest test NAME that starts NP ranks of the installed
# dmnist-comm-check on comm backend BACKEND with dmnist-comm-job (LAUNCHER
# local, the default: NP processes with DMNIST_RANK, DMNIST_WORLD_SIZE and a
# fresh file:// rendezvous; mpi: mpirun -np NP) and passes when every rank
# ends "DONE ... 0 failed". The backend is found along DMNIST_PLUGIN_PATH
# (set to this project's plugin folder, ${CMAKE_BINARY_DIR}/plugins, unless
# ENVIRONMENT of the test says otherwise), then the installed plugins.
# E.g. a lost peer: JOB_ARGS --expect-done 1 ARGS --timeout 2 --fault exit.
function(dmnist_add_comm_test NAME BACKEND NP)
  cmake_parse_arguments(T "" "LAUNCHER;TIMEOUT" "JOB_ARGS;ARGS" ${ARGN})
  if(T_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "dmnist_add_comm_test(${NAME}): unknown arguments: ${T_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT dmnist_COMM_JOB_EXECUTABLE OR NOT dmnist_COMM_CHECK_EXECUTABLE)
    message(FATAL_ERROR "dmnist_add_comm_test(${NAME}): dmnist_COMM_JOB_EXECUTABLE is not set (find_package(dmnist) sets it)")
  endif()
  if(NOT T_LAUNCHER)
    set(T_LAUNCHER local)
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  math(EXPR limit "${T_TIMEOUT} - 10")
  add_test(NAME ${NAME}
    COMMAND ${dmnist_COMM_JOB_EXECUTABLE} ${T_LAUNCHER} ${NP} --limit ${limit} ${T_JOB_ARGS}
            -- ${dmnist_COMM_CHECK_EXECUTABLE} ${BACKEND} ${T_ARGS})
  set_tests_properties(${NAME} PROPERTIES TIMEOUT ${T_TIMEOUT} SKIP_RETURN_CODE 77 PROCESSORS ${NP}
    ENVIRONMENT "DMNIST_PLUGIN_PATH=${CMAKE_BINARY_DIR}/plugins")
endfunction()
