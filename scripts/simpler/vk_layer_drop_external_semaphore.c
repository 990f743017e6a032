/* A Vulkan layer that removes VK_KHR_external_semaphore_fd from vkCreateDevice.
 *
 * SAPIEN 2.2 always enables that device extension; Mesa's lavapipe (the CPU Vulkan driver) does not
 * offer it, so device creation fails with VK_ERROR_EXTENSION_NOT_PRESENT. Rendering never needs it
 * on a CPU-only machine (it shares semaphores with CUDA), so this layer passes every call through and
 * only filters the extension list of vkCreateDevice. The manifest (the .json beside this file) lists
 * the extension under device_extensions, so that the loader accepts the request and lets it reach here.
 *
 * Build: gcc -shared -fPIC -O2 -o libvk_layer_drop_external_semaphore.so vk_layer_drop_external_semaphore.c
 */
#include <stdlib.h>
#include <string.h>
#include <vulkan/vk_layer.h>
#include <vulkan/vulkan.h>

#define DROPPED_EXTENSION "VK_KHR_external_semaphore_fd"
#define EXPORT __attribute__((visibility("default")))

/* One chain below us: every instance and device of a process goes through the same driver here. */
static PFN_vkGetInstanceProcAddr next_instance_proc_addr = NULL;
static PFN_vkGetDeviceProcAddr next_device_proc_addr = NULL;

static VkLayerInstanceCreateInfo *instance_link_info(const VkInstanceCreateInfo *info) {
    VkLayerInstanceCreateInfo *link = (VkLayerInstanceCreateInfo *)info->pNext;
    while (link && !(link->sType == VK_STRUCTURE_TYPE_LOADER_INSTANCE_CREATE_INFO && link->function == VK_LAYER_LINK_INFO))
        link = (VkLayerInstanceCreateInfo *)link->pNext;
    return link;
}

static VkLayerDeviceCreateInfo *device_link_info(const VkDeviceCreateInfo *info) {
    VkLayerDeviceCreateInfo *link = (VkLayerDeviceCreateInfo *)info->pNext;
    while (link && !(link->sType == VK_STRUCTURE_TYPE_LOADER_DEVICE_CREATE_INFO && link->function == VK_LAYER_LINK_INFO))
        link = (VkLayerDeviceCreateInfo *)link->pNext;
    return link;
}

static VKAPI_ATTR VkResult VKAPI_CALL layer_CreateInstance(const VkInstanceCreateInfo *info,
                                                           const VkAllocationCallbacks *allocator,
                                                           VkInstance *instance) {
    VkLayerInstanceCreateInfo *link = instance_link_info(info);
    if (!link) return VK_ERROR_INITIALIZATION_FAILED;
    next_instance_proc_addr = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext; /* the next layer reads its own link */
    PFN_vkCreateInstance create = (PFN_vkCreateInstance)next_instance_proc_addr(NULL, "vkCreateInstance");
    if (!create) return VK_ERROR_INITIALIZATION_FAILED;
    return create(info, allocator, instance);
}

static VKAPI_ATTR VkResult VKAPI_CALL layer_CreateDevice(VkPhysicalDevice physical_device,
                                                         const VkDeviceCreateInfo *info,
                                                         const VkAllocationCallbacks *allocator, VkDevice *device) {
    VkLayerDeviceCreateInfo *link = device_link_info(info);
    if (!link) return VK_ERROR_INITIALIZATION_FAILED;
    PFN_vkGetInstanceProcAddr gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    next_device_proc_addr = link->u.pLayerInfo->pfnNextGetDeviceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;
    PFN_vkCreateDevice create = (PFN_vkCreateDevice)gipa(NULL, "vkCreateDevice");
    if (!create) return VK_ERROR_INITIALIZATION_FAILED;

    const char **kept = malloc(sizeof(char *) * (info->enabledExtensionCount + 1));
    if (!kept) return VK_ERROR_OUT_OF_HOST_MEMORY;
    uint32_t count = 0;
    for (uint32_t i = 0; i < info->enabledExtensionCount; ++i)
        if (strcmp(info->ppEnabledExtensionNames[i], DROPPED_EXTENSION) != 0)
            kept[count++] = info->ppEnabledExtensionNames[i];
    VkDeviceCreateInfo filtered = *info;
    filtered.enabledExtensionCount = count;
    filtered.ppEnabledExtensionNames = kept;
    VkResult result = create(physical_device, &filtered, allocator, device);
    free(kept);
    return result;
}

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetDeviceProcAddr(VkDevice device, const char *name);

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetInstanceProcAddr(VkInstance instance, const char *name) {
    if (!strcmp(name, "vkGetInstanceProcAddr")) return (PFN_vkVoidFunction)vkGetInstanceProcAddr;
    if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)vkGetDeviceProcAddr;
    if (!strcmp(name, "vkCreateInstance")) return (PFN_vkVoidFunction)layer_CreateInstance;
    if (!strcmp(name, "vkCreateDevice")) return (PFN_vkVoidFunction)layer_CreateDevice;
    return next_instance_proc_addr ? next_instance_proc_addr(instance, name) : NULL;
}

EXPORT VKAPI_ATTR PFN_vkVoidFunction VKAPI_CALL vkGetDeviceProcAddr(VkDevice device, const char *name) {
    if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)vkGetDeviceProcAddr;
    return next_device_proc_addr ? next_device_proc_addr(device, name) : NULL;
}
