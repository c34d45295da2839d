# Run nvcc once and keep its ptxas report (-Xptxas -v), which nvcc prints on
# stderr. Invoked by CMakeLists.txt as:
#   cmake -DNVCC=... -DMODE=cubin|fatbin -DARCHS=87,110 -DSRC=... -DOUT=... -DLOG=...
#         [-DPTX_ARCH=110] -P nvcc_compile.cmake
# MODE=cubin compiles for the single arch in ARCHS; MODE=fatbin embeds SASS for
# every arch in ARCHS plus PTX for PTX_ARCH (JIT on newer GPUs).
cmake_minimum_required(VERSION 3.18)
foreach(var NVCC MODE ARCHS SRC OUT LOG)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "nvcc_compile.cmake: ${var} is not set")
  endif()
endforeach()
string(REPLACE "," ";" ARCHS "${ARCHS}")  # lists travel comma-separated
set(flags -O3 -std=c++17 -Xptxas -v -lineinfo)
if(MODE STREQUAL "cubin")
  list(LENGTH ARCHS n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "nvcc_compile.cmake: a cubin has exactly one arch, got '${ARCHS}'")
  endif()
  list(APPEND flags -cubin -arch=sm_${ARCHS})
elseif(MODE STREQUAL "fatbin")
  list(APPEND flags -fatbin)
  foreach(a IN LISTS ARCHS)
    list(APPEND flags -gencode=arch=compute_${a},code=sm_${a})
  endforeach()
  if(DEFINED PTX_ARCH AND NOT PTX_ARCH STREQUAL "")
    list(APPEND flags -gencode=arch=compute_${PTX_ARCH},code=compute_${PTX_ARCH})
  endif()
else()
  message(FATAL_ERROR "nvcc_compile.cmake: unknown MODE '${MODE}'")
endif()
execute_process(
  COMMAND "${NVCC}" ${flags} -o "${OUT}" "${SRC}"
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err)
string(REPLACE ";" " " shown "${flags}")
file(WRITE "${LOG}" "# ${NVCC} ${shown} -o ${OUT} ${SRC}\n${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "nvcc failed (${rc}) for ${MODE} ${ARCHS}:\n${out}${err}")
endif()
